"""Audits of what an app's strategies write: privacy (``privacy``) and counterfactual fairness
(``fairness``). Generic over an app: the caller (or the app's ``AppSpec``) says which fields are
read and which are written; nothing here names an app.
"""
