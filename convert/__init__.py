"""Convert a Hugging Face causal LM into an onnxruntime-genai model folder (see `python -m convert -h`)."""
