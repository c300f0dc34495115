"""The applications behind the ``aaformer-hf`` command (``cli``): embedding extraction (``extract``), ONNX export
(``export``), pictures of the parts and rankings (``visualize``, ``demo``) and writing human-parsing maps
(``write_parsing``). They sit on top of everything else; nothing in the package imports them."""
