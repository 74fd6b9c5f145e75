// face-api's own 68 landmarks and aligned box for face crops (tools/derive_faceapi_box.py).
//
// Runs @vladmandic/face-api's faceLandmark68Net on TensorFlow.js's pure-JS CPU backend:
//   node tools/faceapi_landmarks.mjs MODEL_DIR INPUT.json OUTPUT.json
// MODEL_DIR holds face_landmark_68_model-weights_manifest.json and its .bin (the npm
// package's model/ folder). INPUT.json: {"images": [{"height", "width", "rgb": base64}]},
// each a face crop cut at a detector's box, as face-api's detectFaceLandmarks does.
// OUTPUT.json: per image {"points": 68 [x, y] in crop pixels, "box": landmarks.align()}.
// Packages are resolved from the current directory's node_modules.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
const [modelDir, inputPath, outputPath] = process.argv.slice(2);
const require = createRequire(path.join(process.cwd(), 'noop.js'));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;
await tf.setBackend('cpu'); await tf.ready();
await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
const { images } = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
const out = [];
for (const { height, width, rgb } of images) {
  const t = tf.tensor3d(Int32Array.from(Buffer.from(rgb, 'base64')), [height, width, 3], 'int32');
  const lm = await faceapi.nets.faceLandmark68Net.detectLandmarks(t);
  const box = lm.align();  // face-api's alignedRect geometry (minBbox + 0.2), crop pixels
  out.push({ points: lm.positions.map((p) => [p.x, p.y]), box: [box.x, box.y, box.width, box.height] });
  t.dispose();
}
fs.writeFileSync(outputPath, JSON.stringify(out));
