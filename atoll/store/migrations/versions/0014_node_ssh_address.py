"""node ssh address: where a node's SSH gateway listens and its host key, for the API replicas' gateways

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 21:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: a node registered before records them at its next heartbeat; a node without an
    # SSH gateway (--ssh-port 0) records none
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ssh_address', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('ssh_host_key', sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('ssh_host_key')
        batch_op.drop_column('ssh_address')
