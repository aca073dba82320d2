"""Floor 5 (beside core): fine-tuning on transformers Trainer: SFT data and loss, attack sets, the harden
methods (a registry, one file each), the trainer set-up and the model folder it writes."""
