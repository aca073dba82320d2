"""Floor 3: weights of a model, without running it: the one selector of a layer range's linear maps, and
scaling them by α in a torch model or a GGUF file."""
