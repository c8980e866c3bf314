"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 16:09:43.306206
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('labelers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('invite_token', sa.String(length=255), nullable=True),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("role IN ('labeler', 'admin', 'simulated', 'ai_judge', 'import')", name=op.f('ck_labelers_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_labelers')),
    sa.UniqueConstraint('invite_token', name=op.f('uq_labelers_invite_token')),
    sa.UniqueConstraint('name', name=op.f('uq_labelers_name'))
    )
    op.create_table('prompts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('messages', sa.JSON(), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=False),
    sa.Column('split', sa.String(length=32), nullable=False),
    sa.Column('source', sa.String(length=512), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prompts')),
    sa.UniqueConstraint('content_hash', name=op.f('uq_prompts_content_hash'))
    )
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prompts_split'), ['split'], unique=False)

    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_stage'), ['stage'], unique=False)

    op.create_table('responses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('messages', sa.JSON(), nullable=True),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('policy', sa.String(length=512), nullable=False),
    sa.Column('checkpoint', sa.String(length=1024), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('sampling', sa.JSON(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('num_tokens', sa.Integer(), nullable=True),
    sa.Column('finished', sa.Boolean(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_responses_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_responses_prompt_id_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_responses_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_responses'))
    )
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.create_index('ix_responses_prompt_round_policy', ['prompt_id', 'round', 'policy'], unique=False)
        batch_op.create_index(batch_op.f('ix_responses_round'), ['round'], unique=False)

    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('response_ids', sa.JSON(), nullable=False),
    sa.Column('labels_needed', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('pairwise', 'rank', 'rating', 'thumbs', 'flaws', 'critique', 'ab_eval')", name=op.f('ck_tasks_kind')),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_tasks_prompt_id_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_priority'), ['priority'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_round'), ['round'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_status'), ['status'], unique=False)

    op.create_table('assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_assignments_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_assignments_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assignments')),
    sa.UniqueConstraint('task_id', 'labeler_id', name='uq_assignments_task_labeler')
    )
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assignments_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_assignments_task_id'), ['task_id'], unique=False)

    op.create_table('comparisons',
    sa.Column('response_a_id', sa.Integer(), nullable=False),
    sa.Column('response_b_id', sa.Integer(), nullable=False),
    sa.Column('choice', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("choice IN ('a', 'b', 'tie', 'cant_tell')", name=op.f('ck_comparisons_choice')),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_comparisons_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['response_a_id'], ['responses.id'], name=op.f('fk_comparisons_response_a_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_b_id'], ['responses.id'], name=op.f('fk_comparisons_response_b_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_comparisons_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparisons'))
    )
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparisons_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparisons_response_a_id'), ['response_a_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparisons_response_b_id'), ['response_b_id'], unique=False)

    op.create_table('critiques',
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('rewrite_response_id', sa.Integer(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_critiques_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_critiques_response_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rewrite_response_id'], ['responses.id'], name=op.f('fk_critiques_rewrite_response_id_responses'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_critiques_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_critiques'))
    )
    with op.batch_alter_table('critiques', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_critiques_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_critiques_response_id'), ['response_id'], unique=False)

    op.create_table('flaw_reports',
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('categories', sa.JSON(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_flaw_reports_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_flaw_reports_response_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_flaw_reports_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flaw_reports'))
    )
    with op.batch_alter_table('flaw_reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flaw_reports_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_flaw_reports_response_id'), ['response_id'], unique=False)

    op.create_table('rankings',
    sa.Column('prompt_id', sa.Integer(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_rankings_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['prompt_id'], ['prompts.id'], name=op.f('fk_rankings_prompt_id_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_rankings_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rankings'))
    )
    with op.batch_alter_table('rankings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rankings_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_rankings_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('ratings',
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Integer(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('score BETWEEN 1 AND 5', name=op.f('ck_ratings_score')),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_ratings_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_ratings_response_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_ratings_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ratings'))
    )
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ratings_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ratings_response_id'), ['response_id'], unique=False)

    op.create_table('thumbs',
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('up', sa.Boolean(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('labeler_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['labeler_id'], ['labelers.id'], name=op.f('fk_thumbs_labeler_id_labelers')),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_thumbs_response_id_responses'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_thumbs_task_id_tasks'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_thumbs'))
    )
    with op.batch_alter_table('thumbs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_thumbs_labeler_id'), ['labeler_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_thumbs_response_id'), ['response_id'], unique=False)

    op.create_table('ranking_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ranking_id', sa.Integer(), nullable=False),
    sa.Column('response_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['ranking_id'], ['rankings.id'], name=op.f('fk_ranking_items_ranking_id_rankings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['response_id'], ['responses.id'], name=op.f('fk_ranking_items_response_id_responses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ranking_items')),
    sa.UniqueConstraint('ranking_id', 'position', name=op.f('uq_ranking_items_ranking_id_position')),
    sa.UniqueConstraint('ranking_id', 'response_id', name=op.f('uq_ranking_items_ranking_id_response_id'))
    )
    with op.batch_alter_table('ranking_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ranking_items_ranking_id'), ['ranking_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('ranking_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ranking_items_ranking_id'))

    op.drop_table('ranking_items')
    with op.batch_alter_table('thumbs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_thumbs_response_id'))
        batch_op.drop_index(batch_op.f('ix_thumbs_labeler_id'))

    op.drop_table('thumbs')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ratings_response_id'))
        batch_op.drop_index(batch_op.f('ix_ratings_labeler_id'))

    op.drop_table('ratings')
    with op.batch_alter_table('rankings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rankings_prompt_id'))
        batch_op.drop_index(batch_op.f('ix_rankings_labeler_id'))

    op.drop_table('rankings')
    with op.batch_alter_table('flaw_reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flaw_reports_response_id'))
        batch_op.drop_index(batch_op.f('ix_flaw_reports_labeler_id'))

    op.drop_table('flaw_reports')
    with op.batch_alter_table('critiques', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_critiques_response_id'))
        batch_op.drop_index(batch_op.f('ix_critiques_labeler_id'))

    op.drop_table('critiques')
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_comparisons_response_b_id'))
        batch_op.drop_index(batch_op.f('ix_comparisons_response_a_id'))
        batch_op.drop_index(batch_op.f('ix_comparisons_labeler_id'))

    op.drop_table('comparisons')
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_assignments_task_id'))
        batch_op.drop_index(batch_op.f('ix_assignments_labeler_id'))

    op.drop_table('assignments')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_status'))
        batch_op.drop_index(batch_op.f('ix_tasks_round'))
        batch_op.drop_index(batch_op.f('ix_tasks_priority'))

    op.drop_table('tasks')
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_responses_round'))
        batch_op.drop_index('ix_responses_prompt_round_policy')

    op.drop_table('responses')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_stage'))

    op.drop_table('runs')
    with op.batch_alter_table('prompts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_prompts_split'))

    op.drop_table('prompts')
    op.drop_table('labelers')
