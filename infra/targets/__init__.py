"""The three targets (aks, vm, cluster): each builds its platform and returns the same contract."""
