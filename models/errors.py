"""The pack's own errors: each says what was wrong and what to do."""


class DPIRError(Exception):
    """Base of every error the pack raises on purpose."""


class DPIRModelError(DPIRError):
    """A model file or tensor does not have the expected layout."""


class DPIRInputError(DPIRError):
    """An input (image, latent, conditioning, option) cannot be used."""
