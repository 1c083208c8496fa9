"""The tiny shapes-world CLIP's contrastive training (the library side of scripts/train_clip.py).

`arguments` (the recipe keys), `scenes` (rows encoded once into pixels and token ids), `training`
(the tower pretraining and the contrastive stage), `metrics` (held-out retrieval and attribute
discrimination), `card` (the model card), `run` (`run_clip_training`: all of it, in order).
"""
