# EventBridge Scheduler starts `bake run` nightly as a Fargate task (the container image holds
# bake, the recipes and the pipelines). Scheduled runs are quiet when nothing changed and never
# promote to a prod channel. The task's journals are ephemeral: on AWS, `bake sweep` finds what a
# dead run left through the bake:run-id tags and the SSM lock, not the journal.

terraform {
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

variable "bake_image" {
  description = "Container image with bake, recipes/, validators/ and pipelines/."
  type        = string
  default     = "123456789012.dkr.ecr.us-east-1.amazonaws.com/bake:latest"
}

variable "subnet_ids" {
  type    = list(string)
  default = ["subnet-0aaaaaaaaaaaaaaa1"]
}

variable "task_role_arn" {
  description = "Role with the policy `bake iam-policy pipelines/aws.toml` prints."
  type        = string
  default     = "arn:aws:iam::123456789012:role/bake"
}

variable "execution_role_arn" {
  type    = string
  default = "arn:aws:iam::123456789012:role/bake-task-execution"
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for the run logs and the schedule (its key policy must let CloudWatch Logs and EventBridge Scheduler use it)."
  type        = string
  default     = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
}

variable "scheduler_role_arn" {
  description = "Role EventBridge Scheduler assumes to run the task (ecs:RunTask, iam:PassRole)."
  type        = string
  default     = "arn:aws:iam::123456789012:role/bake-scheduler"
}

resource "aws_ecs_cluster" "bake" {
  name = "bake"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "bake" {
  name              = "/bake/runs"
  retention_in_days = 365 # what each run built, published and cleaned up: a year of audit trail
  kms_key_id        = var.kms_key_arn
}

resource "aws_ecs_task_definition" "bake" {
  family                   = "bake"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "512"
  memory                   = "1024"
  task_role_arn            = var.task_role_arn
  execution_role_arn       = var.execution_role_arn

  container_definitions = jsonencode([{
    name      = "bake"
    image     = var.bake_image
    essential = true
    command   = ["run", "pipelines/aws.toml", "-q", "--output", "json"]
    # The image is read-only; the run's journals and temporary files go to task storage that
    # ends with the task (on AWS, `bake sweep` finds a dead run's leftovers by tags, not journals).
    readonlyRootFilesystem = true
    environment            = [{ name = "BAKE_STATE_DIR", value = "/var/lib/bake" }]
    mountPoints = [
      { sourceVolume = "state", containerPath = "/var/lib/bake", readOnly = false },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    # bake runs its cleanups on SIGTERM; ECS waits stopTimeout seconds before SIGKILL.
    stopTimeout = 120
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.bake.name
        awslogs-region        = "us-east-1"
        awslogs-stream-prefix = "bake"
      }
    }
  }])

  volume {
    name = "state"
  }
  volume {
    name = "tmp"
  }
}

resource "aws_scheduler_schedule" "nightly" {
  name                         = "bake-nightly"
  schedule_expression          = "cron(0 3 * * ? *)"
  schedule_expression_timezone = "UTC"
  kms_key_arn                  = var.kms_key_arn

  flexible_time_window {
    mode                      = "FLEXIBLE"
    maximum_window_in_minutes = 15
  }

  target {
    arn      = aws_ecs_cluster.bake.arn
    role_arn = var.scheduler_role_arn

    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.bake.arn
      launch_type         = "FARGATE"

      network_configuration {
        subnets          = var.subnet_ids
        assign_public_ip = false
      }
    }

    retry_policy {
      maximum_retry_attempts = 0
    }
  }
}
