"""trainwire: the training runs of 'Learning PyTorch with Examples' over HTTP.

This package is what a user of the service imports: the job vocabulary (`trainwire.jobs`), the
API's models (`trainwire.models`) and the hyperparameters (`trainwire.hyperparameters`). It loads
no torch and no server code.
"""
