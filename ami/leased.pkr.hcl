# Bakes a lease AMI: the newest official Debian 12 image plus the leased package,
# enabled and ready, with no instance-specific state (see provision.sh).
#
#   packer init ami/
#   packer build -var region=eu-west-1 \
#     -var deb=target/debian/leased_0.1.0_amd64.deb ami/leased.pkr.hcl
#
# The package's architecture must match `arch` (build it on, or for, that machine).

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type        = string
  description = "AWS region to build the AMI in (and where it is registered)."
}

variable "deb" {
  type        = string
  description = "Path to leased_<version>_<arch>.deb, from packaging/build-deb.sh."
  validation {
    condition     = can(regex("leased_[^_/]+_(amd64|arm64)\\.deb$", var.deb))
    error_message = "The deb variable must name a leased_<version>_<arch>.deb file."
  }
}

variable "arch" {
  type        = string
  default     = "amd64"
  description = "Debian architecture of the image: amd64 or arm64."
  validation {
    condition     = contains(["amd64", "arm64"], var.arch)
    error_message = "The arch variable must be amd64 or arm64."
  }
}

variable "source_ami" {
  type        = string
  default     = ""
  description = "A fixed base AMI id. Empty: the newest image matching base_ami_name from base_ami_owner."
}

variable "base_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Account that publishes the base image (the default is Debian's own)."
}

variable "base_ami_name" {
  type        = string
  default     = "debian-12-{arch}-*"
  description = "Name pattern of the base image; {arch} is replaced by the arch variable."
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Instance type of the build machine. Empty: t3.small (amd64) or t4g.small (arm64)."
}

variable "ssh_username" {
  type        = string
  default     = "admin"
  description = "Login user of the base image (admin on Debian's images)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build machine (reachable by SSH from here). Empty: the region's default VPC."
}

variable "ami_name_prefix" {
  type    = string
  default = "lease-leased"
}

variable "extra_packages" {
  type        = string
  default     = ""
  description = "More Debian packages for the image, space-separated, e.g. docker.io."
}

locals {
  version       = regex("leased_([^_/]+)_", var.deb)[0]
  deb_name      = basename(var.deb)
  stamp         = formatdate("YYYYMMDD-hhmmss", timestamp())
  instance_type = var.instance_type != "" ? var.instance_type : (var.arch == "arm64" ? "t4g.small" : "t3.small")
}

source "amazon-ebs" "debian" {
  region          = var.region
  instance_type   = local.instance_type
  ssh_username    = var.ssh_username
  subnet_id       = var.subnet_id != "" ? var.subnet_id : null
  ami_name        = "${var.ami_name_prefix}-${local.version}-${var.arch}-${local.stamp}"
  ami_description = "Debian 12 with leased ${local.version} (the lease agent), enabled"

  source_ami = var.source_ami != "" ? var.source_ami : null
  dynamic "source_ami_filter" {
    for_each = var.source_ami == "" ? [1] : []
    content {
      owners      = [var.base_ami_owner]
      most_recent = true
      filters = {
        name                = replace(var.base_ami_name, "{arch}", var.arch)
        root-device-type    = "ebs"
        virtualization-type = "hvm"
      }
    }
  }

  # The agent speaks IMDSv2 only: instances from this image default to it, and so
  # does the build machine.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name                   = "${var.ami_name_prefix}-${local.version}-${var.arch}"
    "lease-agent-version"  = local.version
    "lease-base-image"     = "{{ .SourceAMIName }}"
  }
  run_tags = {
    Name = "packer: ${var.ami_name_prefix} bake"
  }
}

build {
  sources = ["source.amazon-ebs.debian"]

  provisioner "file" {
    source      = var.deb
    destination = "/tmp/${local.deb_name}"
  }

  provisioner "file" {
    source      = "${path.root}/provision.sh"
    destination = "/tmp/lease-provision.sh"
  }

  # Last step: provision.sh clears the build's own SSH key and the instance state.
  provisioner "shell" {
    environment_vars = ["LEASE_EXTRA_PACKAGES=${var.extra_packages}"]
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} sh '{{ .Path }}'"
    inline           = ["sh /tmp/lease-provision.sh /tmp/${local.deb_name}"]
  }

  post-processor "manifest" {
    output     = "ami-manifest.json"
    strip_path = true
  }
}
