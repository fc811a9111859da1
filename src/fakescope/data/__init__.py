"""From files to tensors: reading images and videos safely, data folders and their splits, face
crops, augmentations and the torch Dataset."""
