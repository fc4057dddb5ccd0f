"""GANFit engine: 3D face reconstruction from photos (Fast-GANFit, Gecer et al.).

The engine never imports bpy; the Blender add-on talks to it through ``ganfit serve``.
"""

__version__ = "0.1.0"
