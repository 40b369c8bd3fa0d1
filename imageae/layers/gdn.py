"""Generalized divisive normalization (Balle, Laparra and Simoncelli 2016).

GDN is the nonlinearity of the learned image codecs (Balle et al. 2017, 2018; Minnen et al.
2018): each channel is divided by a learned norm of all channels at the same position,

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij * x_j^2)          (GDN)
    y_i = x_i * sqrt(beta_i + sum_j gamma_ij * x_j^2)          (inverse GDN, in synthesis)

The sum over j is a 1x1 convolution, written here as a matmul over the channel axis.

Positivity of beta and gamma comes from the nonnegative reparameterization of
tensorflow_compression (``NonnegativeParameterization``): the stored variable is
``v = sqrt(value + pedestal)`` and the layer uses ``value = lower_bound(v, bound)^2 - pedestal``
with ``pedestal = 2^-36`` and ``bound = sqrt(minimum + pedestal)``; beta's minimum is
``beta_min`` (1e-6), gamma's is 0. The square keeps the gradient of small values from
vanishing; the pedestal keeps it finite at zero. :func:`lower_bound` passes the gradient
through the bound whenever it points back into the allowed range, so a parameter that
touched its bound (many gamma entries do) can leave it again; a plain ``maximum`` would hold
it there forever.

Everything is ``keras.ops``, so the layer runs on the TensorFlow and the JAX backend. The
reparameterization is computed in float32 even under a mixed policy (a bfloat16 pedestal of
2^-36 and minimum of 1e-6 would be meaningless); the normalization itself runs in the layer's
compute dtype.
"""

import keras
from keras import ops

_PEDESTAL = 2.0**-36  # tensorflow_compression's reparam_offset (2^-18) squared


def lower_bound(x, bound):
    """``maximum(x, bound)`` whose gradient also flows where ``x < bound`` if it pushes ``x`` up.

    The identity gradient of CompressAI's ``LowerBound`` and tensorflow_compression's
    ``lower_bound``: used for GDN's parameters, the Gaussian scales (0.11) and likelihoods
    (1e-9), so that a value pinned at its bound can still learn its way back.

    Examples
    --------
    >>> from keras import ops
    >>> round(float(lower_bound(ops.convert_to_tensor(-3.0), 0.11)), 6)
    0.11
    """
    x = ops.convert_to_tensor(x)
    bound = ops.cast(bound, x.dtype)

    @ops.custom_gradient
    def _bounded(value):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # Pass the gradient where x is in range, or where descent (-upstream) raises x.
            passes = ops.logical_or(ops.greater_equal(value, bound), ops.less(upstream, 0.0))
            return ops.where(passes, upstream, ops.zeros_like(upstream))

        return ops.maximum(value, bound), grad

    return _bounded(x)


@keras.saving.register_keras_serializable(package="imageae")
class GDN(keras.layers.Layer):
    """Generalized divisive normalization over the last (channel) axis.

    Parameters
    ----------
    inverse : bool
        False: divide by the norm (analysis transforms). True: multiply (IGDN, synthesis).
    beta_min : float
        Lower bound of beta, which keeps the norm away from zero.
    gamma_init : float
        gamma starts as ``gamma_init`` times the identity (beta starts at 1), as in
        tensorflow_compression and CompressAI. ``gamma_init=0`` makes the layer the identity.

    References
    ----------
    J. Balle, V. Laparra, E. P. Simoncelli, "Density modeling of images using a generalized
    normalization transformation", ICLR 2016.

    Examples
    --------
    >>> import numpy as np
    >>> layer = GDN(gamma_init=0.0)  # beta = 1, gamma = 0: the identity
    >>> x = np.array([[0.5, -2.0, 3.0]], np.float32)
    >>> bool(np.allclose(np.asarray(layer(x)), x))
    True
    """

    def __init__(self, inverse=False, beta_min=1e-6, gamma_init=0.1, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)
        self.beta_min = float(beta_min)
        self.gamma_init = float(gamma_init)
        if self.beta_min <= 0:
            raise ValueError(f"beta_min must be positive (it keeps the norm above zero), got {beta_min}")
        if self.gamma_init < 0:
            raise ValueError(f"gamma_init must be >= 0, got {gamma_init}")

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"GDN needs a known channel count (last axis), got input shape {input_shape}")
        self.channels = int(channels)
        # Stored as v = sqrt(value + pedestal); see the module docstring.
        beta_v = (1.0 + _PEDESTAL) ** 0.5
        gamma_diag = (self.gamma_init + _PEDESTAL) ** 0.5
        gamma_off = _PEDESTAL**0.5

        def gamma_initializer(shape, dtype=None):
            eye = ops.eye(shape[0], dtype=dtype or "float32")
            return eye * (gamma_diag - gamma_off) + gamma_off

        # autocast=False: the reparameterization needs float32 under a mixed policy.
        self.beta = self.add_weight(
            shape=(self.channels,), initializer=keras.initializers.Constant(beta_v), name="beta", autocast=False
        )
        self.gamma = self.add_weight(
            shape=(self.channels, self.channels), initializer=gamma_initializer, name="gamma", autocast=False
        )

    def parameters(self):
        """The effective (beta, gamma), float32 tensors of shapes (C,) and (C, C)."""
        beta_bound = (self.beta_min + _PEDESTAL) ** 0.5
        beta = ops.square(lower_bound(ops.cast(self.beta.value, "float32"), beta_bound)) - _PEDESTAL
        gamma = ops.square(lower_bound(ops.cast(self.gamma.value, "float32"), _PEDESTAL**0.5)) - _PEDESTAL
        return beta, gamma

    def set_parameters(self, beta, gamma):
        """Set the effective beta (C,) and gamma (C, C); values below their minimum are raised to it."""
        beta = ops.maximum(ops.convert_to_tensor(beta, "float32"), self.beta_min)
        gamma = ops.maximum(ops.convert_to_tensor(gamma, "float32"), 0.0)
        self.beta.assign(ops.sqrt(beta + _PEDESTAL))
        self.gamma.assign(ops.sqrt(gamma + _PEDESTAL))

    def call(self, x):
        beta, gamma = self.parameters()
        beta = ops.cast(beta, x.dtype)
        gamma = ops.cast(gamma, x.dtype)
        # norm_i = beta_i + sum_j gamma_ij x_j^2: a 1x1 convolution with kernel gamma^T.
        norm = ops.matmul(ops.square(x), ops.transpose(gamma)) + beta
        norm = ops.sqrt(norm)
        return x * norm if self.inverse else x / norm

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(inverse=self.inverse, beta_min=self.beta_min, gamma_init=self.gamma_init)
        return config
