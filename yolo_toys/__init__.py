"""YOLO-Toys: the code the front service and the family runners share.

Importing any module of this package has no side effects: nothing reads the model store, patches
BentoML or changes `os.environ` until a service starts (`yolo_toys.workarounds.install`).
"""

__version__ = "0.2.0"
