"""DreamBooth fine-tuning with PyTorch Lightning: loss, module, callbacks, export, one run, the job body."""
