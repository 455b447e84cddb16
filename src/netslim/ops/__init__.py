"""Pure tensor math shared by methods. Nothing here sees a model."""
