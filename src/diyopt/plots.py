def plot_loss(*a, **k): raise NotImplementedError
