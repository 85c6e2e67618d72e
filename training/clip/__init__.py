"""CLIP fine-tuning: data, losses, tuning modes (locked towers, LoRA), trainer."""
