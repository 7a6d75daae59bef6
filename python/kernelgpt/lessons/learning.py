"""How a network learns: gradient descent, the neuron and its activations, backpropagation."""
from __future__ import annotations


import numpy as np

from .. import ops
from ._common import _figure, _save, lesson


# ---- 1. gradient descent ------------------------------------------------------------------------

def _descend(grad, start, lr, momentum, steps):
    x, v, path = np.array(start, float), np.zeros(2), [np.array(start, float)]
    for _ in range(steps):
        v = momentum * v - lr * grad(x)
        x = x + v
        path.append(x.copy())
    return np.array(path)


@lesson("gradient-descent")
def lesson_gradient_descent(plot=None) -> str:
    """Follow the slope downhill: plain steps, a too-large learning rate, and momentum."""
    # An elongated valley: the error is 0.5 * (x^2 + 4 y^2), lowest at (0, 0).
    loss = lambda p: 0.5 * (p[..., 0] ** 2 + 4 * p[..., 1] ** 2)  # noqa: E731
    grad = lambda p: np.array([p[0], 4 * p[1]])  # noqa: E731
    f = lambda x: x ** 2  # noqa: E731
    df = lambda x, h=1e-6: (f(x + h) - f(x - h)) / (2 * h)  # noqa: E731
    out = [f"derivative: f(x) = x^2 at x = 3 -> slope {df(3.0):.4f} (exactly 2x = 6)", ""]
    runs = {"lr 0.10": (0.10, 0.0), "lr 0.60 (overshoots)": (0.60, 0.0),
            "lr 0.10, momentum 0.90": (0.10, 0.90)}
    paths = {}
    for name, (lr, mom) in runs.items():
        path = _descend(grad, (-2.5, 1.5), lr, mom, 30)
        paths[name] = path
        ls = loss(path)
        out.append(f"{name:>24}: error {ls[0]:.3f} -> after 5 steps {ls[5]:.4f}, "
                   f"after 30 {ls[-1]:.2e}; first y values "
                   + " ".join(f"{y:+.2f}" for y in path[:6, 1]))
    out.append("(with lr 0.60 each step multiplies y by 1 - 0.6*4 = -1.4: it jumps across the "
               "valley further every time and diverges; momentum 0.90 keeps speed, spiralling in)")
    fig, path = _figure(plot, "gradient-descent", figsize=(11, 4.6))
    if fig:
        g = np.linspace(-3, 3, 241)
        X, Y = np.meshgrid(g, g)
        ax, ax2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
        cs = ax.contourf(X, Y, loss(np.stack([X, Y], -1)), 25, cmap="viridis_r")
        fig.colorbar(cs, ax=ax, label="error 0.5 (x² + 4y²)")
        for name, p in paths.items():
            shown = p[np.all(np.abs(p) <= 3, axis=1)]   # the diverging run leaves the map
            ax.plot(shown[:, 0], shown[:, 1], "o-", ms=3, lw=1.2, label=name)
        ax.plot(0, 0, "*", color="white", ms=12, mec="black", label="minimum (0, 0)")
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", xlabel="parameter x",
               ylabel="parameter y", title="paths from (-2.5, 1.5) across the error surface")
        ax.legend(fontsize=7, loc="lower right")
        for name, p in paths.items():
            ax2.semilogy(loss(p), "o-", ms=3, lw=1.2, label=name)
        ax2.set(xlabel="step", ylabel="error (log scale)", title="error after each step")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
        fig.suptitle("Gradient descent: follow the slope downhill (x ← x − lr · slope)")
        _save(fig, path, out)
    return "\n".join(out)


# ---- 2. the neuron and activation functions -----------------------------------------------------

@lesson("neuron")
def lesson_neuron(plot=None) -> str:
    """output = activation(w . x + b) with the explainer's inputs [0.8, 0.2, 0.5]."""
    x = np.array([0.8, 0.2, 0.5], np.float32)
    w = np.array([0.9, -0.3, 0.4], np.float32)
    b = np.float32(0.1)
    z = float(ops.matmul(x[None], w[:, None])[0, 0] + b)
    fmt = lambda a: "[" + ", ".join(f"{v:.1f}" for v in a) + "]"  # noqa: E731
    out = [f"inputs x = {fmt(x)}, weights w = {fmt(w)}, bias b = {b:.1f}",
           f"w . x + b = 0.9*0.8 - 0.3*0.2 + 0.4*0.5 + 0.1 = {z:.4f}"]
    zs = np.array([z, -z], np.float32)
    acts = {"relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh,
            "gelu": ops.gelu, "silu": ops.silu}
    for name, fn in acts.items():
        a = fn(zs)
        out.append(f"{name:>8}(z) = {a[0]:+.4f}    {name}(-z) = {a[1]:+.4f}")
    out.append("without an activation two layers collapse into one: W2 (W1 x) = (W2 W1) x")
    fig, path = _figure(plot, "neuron", figsize=(10, 4.2))
    if fig:
        t = np.linspace(-4, 4, 401).astype(np.float32)
        ax, ax2 = fig.subplots(1, 2, sharex=True)
        for name, fn in acts.items():
            y = np.asarray(fn(t), np.float64)
            line, = ax.plot(t, y, label=name)
            ax2.plot(t, np.gradient(y, t.astype(np.float64)), color=line.get_color(), label=name)
        for a_ in (ax, ax2):
            a_.axhline(0, color="gray", lw=0.5)
            a_.axvline(z, color="black", ls=":", lw=1, label=f"this neuron: z = {z:.2f}")
            a_.grid(alpha=0.3)
            a_.set_xlabel("pre-activation z = w · x + b")
        ax.set(ylabel="activation(z)", title="activation functions (kernelgpt.ops)")
        ax2.set(ylabel="d activation / dz", title="their slopes (what backprop multiplies by)")
        ax.legend(fontsize=8)
        fig.suptitle("A neuron: output = activation(w · x + b), x = [0.8, 0.2, 0.5]")
        _save(fig, path, out)
    return "\n".join(out)


# ---- 3. backpropagation -------------------------------------------------------------------------

@lesson("backprop")
def lesson_backprop(plot=None) -> str:
    """A 3 -> 4 -> 2 network (cat / dog) trained by the chain rule, checked against nudging."""
    rng = np.random.default_rng(0)
    x = np.array([[0.8, 0.2, 0.5]], np.float32)
    target = np.array([0])  # "cat"
    W1 = rng.normal(0, 0.8, (4, 3)).astype(np.float32)
    W2 = rng.normal(0, 0.8, (2, 4)).astype(np.float32)

    def forward(W1, W2):
        h = ops.linear(x, W1)
        a = ops.gelu(h)
        logits = ops.linear(a, W2)
        return h, a, logits

    def loss_of(W1, W2):
        return float(ops.cross_entropy(forward(W1, W2)[2], target))

    out = []
    losses = []
    for step in range(6):
        h, a, logits = forward(W1, W2)
        loss, d_logits = ops.cross_entropy(logits, target, return_grad=True)
        d_W2 = ops.matmul(d_logits, a, trans_a=True)       # dL/dW2 = dlogits^T a
        d_a = ops.matmul(d_logits, W2)                      # back through the layer
        d_h = ops.gelu_backward(d_a, h)                     # back through the activation
        d_W1 = ops.matmul(d_h, x, trans_a=True)
        losses.append(float(loss))
        if step == 0:
            p = ops.softmax(logits)[0]
            out.append(f"forward: probabilities cat {p[0]:.3f}, dog {p[1]:.3f}; "
                       f"loss = -log p(cat) = {float(loss):.4f}")
            eps, num = 1e-2, np.zeros_like(W1, np.float64)
            for i in np.ndindex(W1.shape):
                Wp, Wm = W1.copy(), W1.copy()
                Wp[i] += eps
                Wm[i] -= eps
                num[i] = (loss_of(Wp, W2) - loss_of(Wm, W2)) / (2 * eps)
            out.append("backward: dL/dW1 by the chain rule vs by nudging each weight:")
            for r in range(W1.shape[0]):
                out.append("   " + "  ".join(f"{d_W1[r, c]:+.4f}/{num[r, c]:+.4f}"
                                             for c in range(W1.shape[1])))
            grads = (d_W1.copy(), num)
            out.append(f"   largest difference {np.abs(d_W1 - num).max():.1e} "
                       "(the nudge is a finite difference in float32)")
        W1 = W1 - 0.5 * d_W1   # weight = weight - lr * gradient
        W2 = W2 - 0.5 * d_W2
    p = ops.softmax(forward(W1, W2)[2])[0]
    out.append("update w -= 0.5 * dL/dw, repeated: loss " + " -> ".join(f"{v:.3f}" for v in losses)
               + f"; now p(cat) = {p[0]:.3f}")
    fig, path = _figure(plot, "backprop", figsize=(12, 3.9))
    if fig:
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.3])
        lim = float(max(np.abs(g).max() for g in grads))
        for ax, g, title in zip(axes, grads, ("dL/dW1 by the chain rule",
                                              "dL/dW1 by nudging each weight")):
            im = ax.imshow(g, cmap="RdBu_r", vmin=-lim, vmax=lim)
            for (r, c), val in np.ndenumerate(g):
                ax.text(c, r, f"{val:+.3f}", ha="center", va="center", fontsize=7.5,
                        color="white" if abs(val) > 0.55 * lim else "black")
            ax.set_title(title)
            ax.set_xticks(range(g.shape[1]), [f"x{i + 1}" for i in range(g.shape[1])])
            ax.set_yticks(range(g.shape[0]), [f"h{i + 1}" for i in range(g.shape[0])])
            ax.set(xlabel="input the weight reads", ylabel="hidden unit it feeds")
        fig.colorbar(im, ax=list(axes[:2]), label="dL/dw (one scale for both)", shrink=0.9)
        axes[2].plot(range(len(losses) + 1), losses + [loss_of(W1, W2)], "o-")
        axes[2].set(xlabel="update step", ylabel="loss = −log p(cat)",
                    title="w ← w − 0.5 · dL/dw, repeated")
        axes[2].grid(alpha=0.3)
        fig.suptitle("Backpropagation in a 3 → 4 → 2 network (cat / dog)")
        _save(fig, path, out)
    return "\n".join(out)
