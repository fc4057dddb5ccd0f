"""Differentiable renderer in plain PyTorch (paper 3.2): CPU, CUDA and MPS alike."""

from .camera import Camera
from .rasterizer import Fragments, rasterize
from .renderer import MeshRenderer, RenderOutput
from .shading import PhongMaterial, PointLight, interpolate, phong, sample_texture, vertex_normals

__all__ = [
    "Camera",
    "Fragments",
    "MeshRenderer",
    "PhongMaterial",
    "PointLight",
    "RenderOutput",
    "interpolate",
    "phong",
    "rasterize",
    "sample_texture",
    "vertex_normals",
]
