"""Running a bundle's model: Keras, or the exported ONNX model with no TensorFlow at all."""
