"""admission claims shared by the processes of a cluster

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 03:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admission_claims',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('org_id', sa.String(length=64), nullable=False),
    sa.Column('sandbox_id', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['orgs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('admission_claims', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_admission_claims_org_id'), ['org_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_admission_claims_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('admission_claims', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_admission_claims_expires_at'))
        batch_op.drop_index(batch_op.f('ix_admission_claims_org_id'))
    op.drop_table('admission_claims')
