# %% [markdown]
# # A learning-rate scan, from a notebook
#
# The service trains; this side only needs `trainwire` (no torch). Start the service
# (`make run`), then run the cells in Jupyter or VS Code (this is a "percent" script: jupytext
# opens it as a notebook), or all at once with `python examples/notebook.py`.
# The URL comes from `TRAINWIRE_URL` (default http://127.0.0.1:8000), a token from
# `TRAINWIRE_API_TOKEN`.

# %%
from trainwire import Client, Loss, Status

tw = Client()
RATES = [1e-5, 3e-5, 1e-4, 3e-4]

# the tutorial's `nn` program, once per learning rate, same seed: only the rate differs
jobs = [
    tw.submit("nn", seed=0, steps=200, learning_rate=lr, label=f"lr scan {lr:g}") for lr in RATES
]
[job.id for job in jobs]

# %% [markdown]
# Follow one run live: a `Loss` per step, a `Status` on each change, the final `Status` last.
# The stream reconnects by itself if the connection drops or the service restarts.

# %%
for event in tw.stream(jobs[-1].id):
    if isinstance(event, Loss) and event.step % 50 == 0:
        print(f"step {event.step:4d}  loss {event.loss:.6g}")
    elif isinstance(event, Status):
        print(event.job.status.value)

# %% [markdown]
# Wait for the rest, then read every curve back (all pages, in step order).

# %%
finished = [tw.wait(job.id) for job in jobs]
curves = {job.hyperparameters["learning_rate"]: tw.losses(job.id) for job in finished}
for job in finished:
    print(f"{job.label:20} {job.status.value:10} final loss {job.last_loss:.4g}")

# %%
try:
    import matplotlib.pyplot as plt
except ImportError:
    print("pip install matplotlib to plot the curves")
else:
    for lr, (steps, losses) in curves.items():
        plt.semilogy(steps, losses, label=f"lr = {lr:g}")
    plt.xlabel("step")
    plt.ylabel("loss (sum of squares)")
    plt.legend()
    plt.show()

# %% [markdown]
# In async code (a notebook's cells can `await`), `AsyncClient` has the same methods:
#
# ```python
# from trainwire import AsyncClient
# async with AsyncClient() as atw:
#     finished = await asyncio.gather(*(atw.wait(job.id) for job in jobs))
#     async for event in atw.stream(jobs[0].id): ...
# ```

# %%
tw.close()
