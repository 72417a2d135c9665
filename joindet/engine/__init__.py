"""Training and evaluation: trainers, the prior refresh hook, the yacs and LazyConfig routes of train_net.py."""
