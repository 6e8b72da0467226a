"""Example tasks for bringing your own data (recipes/custom-example): a data generator and a labeler each."""
