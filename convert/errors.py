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


# 6 was "target not supported on this machine": every target now builds and verifies on the CPU.


class NotEnoughDisk(ConversionError):
    exit_code = 7


class OutputConflict(ConversionError):
    exit_code = 8


class VerificationFailed(ConversionError):
    exit_code = 9
