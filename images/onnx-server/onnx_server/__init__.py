"""An OpenAI-compatible server for onnxruntime-genai models (`python -m onnx_server --model DIR`)."""
