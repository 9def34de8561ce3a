"""A stand-in for torchvision, for CPU test machines only: the one torchvision wheel
there is a CUDA build that breaks transformers' imports. It holds exactly what Qwen-VL-Chat's
``visual.py`` uses (Compose, Resize, ToTensor, Normalize, InterpolationMode), with
torchvision's semantics for RGB PIL pictures. GPU workers install the real torchvision."""

__version__ = "0.0+stand-in"
