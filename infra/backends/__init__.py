"""One description per engine (vllm, ollama, onnx) and the registry that lists them."""
