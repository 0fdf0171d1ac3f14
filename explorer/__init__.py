"""State-Dict Explorer: see what is inside PyTorch checkpoints and what ``load_state_dict`` would really do."""
__version__ = "0.1.0"
