"""Running models: ONNX Runtime sessions and providers (runtime), the model files, their
pins and fetching (modelstore), and our converter of face-api's network (faceapi)."""
