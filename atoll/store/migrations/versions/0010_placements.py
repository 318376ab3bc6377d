"""placement: the nodes' own capacity and reservations, and each sandbox's placement

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 07:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _json_columns(kind: str) -> None:
    # placement reads these on every node for every create: jsonb is parsed once, when written
    if op.get_bind().dialect.name == 'postgresql':
        for column in ('templates', 'pools'):
            op.execute(f'ALTER TABLE nodes ALTER COLUMN {column} TYPE {kind} USING {column}::{kind}')


def upgrade() -> None:
    _json_columns('jsonb')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cpus', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('memory_mib', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('vcpu_reserved', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('memory_mib_reserved', sa.Integer(), server_default='0', nullable=False))
    op.create_table('placements',
    sa.Column('sandbox_id', sa.String(length=64), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('template', sa.String(length=255), nullable=False),
    sa.Column('vcpu', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sandbox_id')
    )
    with op.batch_alter_table('placements', schema=None) as batch_op:
        batch_op.create_index('ix_placements_org_id_node_id', ['org_id', 'node_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_placements_node_id'), ['node_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('placements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_placements_node_id'))
        batch_op.drop_index('ix_placements_org_id_node_id')
    op.drop_table('placements')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('memory_mib_reserved')
        batch_op.drop_column('vcpu_reserved')
        batch_op.drop_column('memory_mib')
        batch_op.drop_column('cpus')
    _json_columns('json')
