"""Network definitions: CIFAR ResNet/VGG/DenseNet, AWD-LSTM, DCGAN/SN-GAN, Transformer."""
