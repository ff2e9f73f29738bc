"""GPU provisioning on Novita: the create → monitor → webhook chain and the instance actions."""
