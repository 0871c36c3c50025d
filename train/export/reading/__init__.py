"""Where exported weights come from: DeepSpeed ZeRO-3 checkpoints (read straight from the partitioned
files, through a pickle-safe loader), Hugging Face folders and PEFT adapters, all as lazy tensors."""
