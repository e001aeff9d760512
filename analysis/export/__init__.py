"""Export stage: a trained model folder as one ONNX file that takes raw skim columns."""
