"""Every way a conversion can fail, as one line for the user and a distinct exit code."""


class ConversionError(Exception):
    exit_code = 1


class UsageError(ConversionError):
    exit_code = 2


class ModelNotFound(ConversionError):
    exit_code = 3


class GatedModel(ConversionError):
    exit_code = 4


class UnsupportedArchitecture(ConversionError):
    exit_code = 5


class UnsupportedTarget(ConversionError):
    exit_code = 6


class NotEnoughDisk(ConversionError):
    exit_code = 7


class OutputConflict(ConversionError):
    exit_code = 8


class VerificationFailed(ConversionError):
    exit_code = 9
