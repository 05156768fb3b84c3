"""The published SFDA and LogME in numpy: the baselines that
bench_scorers.py times ped_fast's scorers against.

Transcribed from what docs/spec.md §2 says the published code does,
with its data flow kept: SFDA builds Sw with a per-class covariance loop,
the total scatter with one more covariance, and solves the generalized
eigenproblem (Sb, B) with scipy.linalg.eigh for all D eigenvectors, twice
(before and after ConfMix); LogME forms X^T X, takes its SVD, and loops over
the classes with one projection of the N x k left singular vectors each.
One deliberate change: SFDA copies X before ConfMix, which the published
code does to the caller's array in place (the copy is part of the timing).
"""
import numpy as np
from scipy import linalg


def _cov(x, shrinkage=-1.0):
    emp_cov = np.cov(np.asarray(x).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    dim = emp_cov.shape[0]
    mu = np.trace(emp_cov) / dim
    shrunk = (1.0 - shrinkage) * emp_cov
    shrunk.flat[:: dim + 1] += shrinkage * mu
    return shrunk


def _softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def _largest_eigenvalue(a, iterations=3):
    x = a.sum(axis=1)
    for _ in range(iterations):
        y = a @ x
        y = y / np.linalg.norm(y, 2)
        x = a @ y
        x = x / np.linalg.norm(x, 2)
    return x.T @ a @ y


class _SFDA:
    def __init__(self, shrinkage=None):
        self.shrinkage = shrinkage

    def fit(self, x, y):
        classes, y = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(y) / float(len(y))
        means = np.zeros((len(classes), x.shape[1]))
        np.add.at(means, y, x)
        means /= np.bincount(y)[:, None]
        cov = np.zeros((x.shape[1], x.shape[1]))
        for idx in range(len(classes)):
            cov += self.priors_[idx] * np.atleast_2d(_cov(x[y == idx, :]))
        sw = cov
        if self.shrinkage is None:
            self.shrinkage = max(np.exp(-5 * _largest_eigenvalue(sw)), 1e-10)
        st = _cov(x, shrinkage=self.shrinkage)
        dim = sw.shape[0]
        shrunk_sw = (1.0 - self.shrinkage) * sw
        shrunk_sw.flat[:: dim + 1] += self.shrinkage * np.trace(sw) / dim
        sb = st - shrunk_sw
        evals, evecs = linalg.eigh(sb, shrunk_sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = np.dot(means, evecs).dot(evecs.T)
        self.intercept_ = -0.5 * np.diag(np.dot(means, self.coef_.T)) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _softmax(np.dot(x, self.coef_.T) + self.intercept_)


def sfda_published(x, y):
    """SFDA score, float64 (labels 0..C-1)."""
    x = np.array(x, dtype=np.float64)  # ConfMix below writes into x
    y = np.asarray(y)
    n = len(y)
    num_classes = len(np.unique(y))
    first = _SFDA()
    prob = first.fit(x, y).predict_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    means = np.stack([x[y == c].mean(axis=0) for c in range(num_classes)])
    others = (means.sum(axis=0) - means) / (num_classes - 1)
    for c in range(num_classes):
        rows = np.where(y == c)[0]
        q = prob[rows, c].reshape(-1, 1)
        x[rows] = q * x[rows] + (1 - q) * others[c]
    second = _SFDA(shrinkage=first.shrinkage)
    prob = second.fit(x, y).predict_proba(x)
    return float(np.sum(prob[np.arange(n), y]) / n)


def _truncated_svd(x):
    u, s, vh = np.linalg.svd(x.transpose() @ x)
    s = np.sqrt(s)
    u_times_sigma = x @ vh.transpose()
    k = np.sum((s > 1e-10) * 1)
    s = s.reshape(-1, 1)[:k]
    vh = vh[:k]
    u = u_times_sigma[:, :k] / s.reshape(1, -1)
    return u, s, vh


def logme_published(f, y, regression=False):
    """LogME (fixed-point solver), float64: classification (labels 0..C-1)
    or regression (real targets, N or N x K)."""
    f = np.asarray(f, dtype=np.float64)
    y = np.asarray(y)
    if regression:
        y = y.astype(np.float64).reshape(len(y), -1)
    n, dim = f.shape
    if n > dim:
        u, s, vh = _truncated_svd(f)
    else:
        u, s, vh = np.linalg.svd(f, full_matrices=False)
        s = s.reshape(-1, 1)
    sigma = s**2
    evidences = []
    for i in range(y.shape[1] if regression else int(y.max() + 1)):
        y_ = (y[:, i] if regression else (y == i).astype(np.float64)).reshape(-1, 1)
        x = u.T @ y_
        x2 = x**2
        res_x2 = (y_**2).sum() - x2.sum()
        alpha, beta = 1.0, 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = (sigma / (sigma + t)).sum()
            m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
            res2 = (x2 / ((1 + sigma / t) ** 2)).sum() + res_x2
            alpha = gamma / (m2 + 1e-5)
            beta = (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidence = (dim / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                    - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))
