"""Image files: scanning and splitting an ImageFolder (image_folder), the one path from an image
file to the network's input (decode), files named on a command line (collect), and prepared
images as tensors (datasets).
"""
