"""What an export writes: the BF16 / FP8 / LoRA tensor formats, streamed into sharded safetensors, and
the folder files around them (config, generation config, tokenizer + template, model card)."""
