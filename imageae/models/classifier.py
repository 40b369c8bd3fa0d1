"""A small digit classifier whose penultimate layer is the feature space for digit FID/KID.

Inception features know nothing of handwritten digits; a LeNet-style network trained on MNIST
gives a domain feature space (the usual practice for MNIST FID, see ../ANCHORS.md).
"""

import keras


@keras.saving.register_keras_serializable(package="imageae")
class DigitClassifier(keras.Model):
    """conv 32 -> conv 32 -> pool -> conv 64 -> conv 64 -> pool -> dense ``feature_dim`` -> 10.

    ``features(x)`` returns the ``feature_dim`` activations used for FID and KID.
    """

    def __init__(self, feature_dim=128, dropout=0.3, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.dropout_rate = float(dropout)
        self.convs = [
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
            keras.layers.MaxPooling2D(name="pool2"),
            keras.layers.Flatten(name="flatten"),
        ]
        self.dense = keras.layers.Dense(self.feature_dim, activation="relu", name="features")
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.logits = keras.layers.Dense(10, dtype="float32", name="logits")

    def build(self, input_shape=(None, 28, 28, 1)):
        shape = tuple(input_shape)
        for layer in self.convs:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.dense.build(shape)
        self.logits.build((None, self.feature_dim))
        self.built = True

    def features(self, x):
        h = keras.ops.cast(x, self.compute_dtype)
        for layer in self.convs:
            h = layer(h)
        return keras.ops.cast(self.dense(h), "float32")

    def call(self, x, training=False):
        return self.logits(self.dropout(self.features(x), training=training))

    def get_config(self):
        config = super().get_config()
        config.update(feature_dim=self.feature_dim, dropout=self.dropout_rate)
        return config
