"""Recommendation models behind one interface (see models.base.ModelBase)."""
