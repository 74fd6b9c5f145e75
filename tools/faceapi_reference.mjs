// Reference outputs of face-api's own AgeGenderNet code, for tests/test_faceapi.py.
//
// Runs @vladmandic/face-api's Node build on TensorFlow.js's pure-JavaScript CPU
// backend (no native binary): every input image (an RGB face crop of any size) goes
// through ageGenderNet.forward(), i.e. face-api's own pad-to-square, 112x112 bilinear
// resize, TinyXception and the two heads. tools/faceapi_fixture.py drives this
// script (it installs the packages in a temporary folder and runs node there):
//
//   node tools/faceapi_reference.mjs MODEL_DIR INPUT.json OUTPUT.json
//
// MODEL_DIR holds age_gender_model-weights_manifest.json and age_gender_model.bin.
// INPUT.json: {"images": [{"height": H, "width": W, "rgb": base64 of H*W*3 bytes}]}.
// OUTPUT.json: {"age": [...], "gender": [[p_male, p_female], ...], "versions": {...}}.
// Packages are resolved from the current directory's node_modules.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const [modelDir, inputPath, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error('usage: node faceapi_reference.mjs MODEL_DIR INPUT.json OUTPUT.json');
  process.exit(64);
}
const require = createRequire(path.join(process.cwd(), 'noop.js'));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const { tf } = faceapi;

await tf.setBackend('cpu');
await tf.ready();
await faceapi.nets.ageGenderNet.loadFromDisk(modelDir);

const { images } = JSON.parse(fs.readFileSync(inputPath, 'utf8'));
const tensors = images.map(({ height, width, rgb }) => {
  const bytes = Buffer.from(rgb, 'base64');
  if (bytes.length !== height * width * 3) throw new Error(`image ${height}x${width}: ${bytes.length} bytes`);
  return tf.tensor3d(Int32Array.from(bytes), [height, width, 3], 'int32');
});
const { age, gender } = await faceapi.nets.ageGenderNet.forward(tensors);
const result = {
  age: Array.from(age.dataSync()),
  gender: gender.arraySync(),
  versions: { faceapi: faceapi.version, tfjs: tf.version_core, backend: tf.getBackend() },
};
fs.writeFileSync(outputPath, JSON.stringify(result));
console.log(`${images.length} image(s): ages ${result.age.map((a) => a.toFixed(2)).join(', ')}`);
