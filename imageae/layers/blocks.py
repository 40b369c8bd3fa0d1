"""Convolutional building blocks shared by the imageae models.

All layers are backend-agnostic Keras 3 (no TensorFlow ops), so the models that use them
train on the TensorFlow or the JAX backend and their weights load into either.
"""

import keras


@keras.saving.register_keras_serializable(package="imageae")
class ResidualBlock(keras.layers.Layer):
    """Two 3x3 convolutions with a ReLU between them and an identity shortcut.

    The block keeps the channel count, as in EDSR and DRUNet: no batch norm (it hurts
    restoration quality and makes the output depend on batch statistics), no activation
    after the sum.

    Parameters
    ----------
    num_filters : int
        Channels of the input and of both convolutions.
    """

    def __init__(self, num_filters, **kwargs):
        super().__init__(**kwargs)
        self.num_filters = num_filters
        self.conv1 = keras.layers.Conv2D(num_filters, 3, padding="same", activation="relu", name="conv1")
        self.conv2 = keras.layers.Conv2D(num_filters, 3, padding="same", name="conv2")

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(tuple(input_shape[:-1]) + (self.num_filters,))

    def call(self, x):
        return x + self.conv2(self.conv1(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_filters=self.num_filters)
        return config
