"""Input x gradient through Captum: pixels times d target / d pixels, pooled onto the patch grid.

Target and pooling: see :mod:`xbench.methods.captum_common`.
"""

from xbench.hookspecs import hookimpl
from xbench.methods.captum_common import CaptumMethod


class InputXGradientMethod(CaptumMethod):
    name = "input_x_gradient"
    description = "Captum InputXGradient on the image of the answer log-probability"

    def attribute(self, forward, pixel_values, generation, vlm):
        from captum.attr import InputXGradient

        return InputXGradient(forward).attribute(pixel_values)


@hookimpl
def xbench_register_methods(registry):
    registry.register(InputXGradientMethod)
