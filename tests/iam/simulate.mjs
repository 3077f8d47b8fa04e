// Evaluates calls bake made (as the tests' proxy recorded them) against an IAM policy with a
// real IAM policy evaluator, @cloud-copilot/iam-simulate.
//
// Each call becomes the requests AWS authorizes for it, per the Service Authorization
// Reference: one per resource the action authorizes (RunInstances: the instance, its volumes,
// the image, the snapshots its block device mappings make volumes from, the security group, the subnet, the network interface; plus ec2:CreateTags with
// ec2:CreateAction for tags at creation, plus iam:PassRole for the instance profile's role),
// with the context keys AWS sets: aws:RequestTag/*, aws:TagKeys, aws:ResourceTag/* (the tags the
// resource had when it was called), ssm:resourceTag/*, ec2:CreateAction, iam:PassedToService.
//
// stdin:  {"policy": {...}, "account": "123456789012", "roles": {"<profile>": "<role>"},
//          "calls": [<calls.jsonl records>], "requests": [<extra requests, already built>]}
// stdout: [{"call": n | null, "action", "resource", "context", "result", "errors"?}]
// A call whose action has no mapping here is reported with result "Unmapped".

import { runSimulation, runUnsafeSimulation } from '@cloud-copilot/iam-simulate'

const input = JSON.parse(await new Promise((resolve) => {
  let text = ''
  process.stdin.on('data', (d) => (text += d))
  process.stdin.on('end', () => resolve(text))
}))
const account = input.account || '123456789012'
const roles = input.roles || {}

const TYPES = [
  ['ami-', 'image'], ['snap-', 'snapshot'], ['i-', 'instance'], ['sg-', 'security-group'],
  ['subnet-', 'subnet'], ['vpc-', 'vpc'], ['vol-', 'volume'], ['eni-', 'network-interface'],
]
// The ID a resource being created is authorized under (its real ID is not known yet).
const NEW = {
  instance: 'i-0000000000000new0', volume: 'vol-0000000000000new0', 'network-interface': 'eni-0000000000000new0',
  image: 'ami-0000000000000new0', snapshot: 'snap-0000000000000new0', 'security-group': 'sg-0000000000000new0',
  subnet: 'subnet-0000000default', vpc: 'vpc-0000000000default',
}
const typeOf = (id) => (TYPES.find(([p]) => id.startsWith(p)) || [null, 'unknown'])[1]
const ec2Arn = (region, type, id) =>
  type === 'image' || type === 'snapshot'
    ? `arn:aws:ec2:${region}::${type}/${id}`
    : `arn:aws:ec2:${region}:${account}:${type}/${id}`
const paramArn = (region, name) =>
  name.startsWith('/aws/service/')
    ? `arn:aws:ssm:${region}::parameter${name}`
    : `arn:aws:ssm:${region}:${account}:parameter${name.startsWith('/') ? name : '/' + name}`

const requestTags = (tags) => {
  const ctx = {}
  for (const [k, v] of tags) ctx[`aws:RequestTag/${k}`] = v
  if (tags.length) ctx['aws:TagKeys'] = tags.map(([k]) => k)
  return ctx
}
const resourceTags = (tags, ssm = false) => {
  const ctx = {}
  for (const [k, v] of Object.entries(tags || {})) {
    ctx[`aws:ResourceTag/${k}`] = v
    if (ssm) ctx[`ssm:resourceTag/${k}`] = v
  }
  return ctx
}

// Form fields `<prefix>.N` in order.
const listOf = (p, prefix) => {
  const out = []
  for (let i = 1; p[`${prefix}.${i}`] !== undefined; i++) out.push(p[`${prefix}.${i}`])
  return out
}
const tagsOf = (p, prefix) => {
  const out = []
  for (let i = 1; p[`${prefix}.${i}.Key`] !== undefined; i++) out.push([p[`${prefix}.${i}.Key`], p[`${prefix}.${i}.Value`] ?? ''])
  return out
}
// TagSpecifications by resource type.
const tagSpecs = (p) => {
  const out = {}
  for (let n = 1; p[`TagSpecification.${n}.ResourceType`] !== undefined; n++) {
    out[p[`TagSpecification.${n}.ResourceType`]] = tagsOf(p, `TagSpecification.${n}.Tag`)
  }
  return out
}

function ec2Requests(call) {
  const p = call.params || {}
  const r = call.region
  const known = call.tags || {}
  const own = (id) => ({ action: `ec2:${call.action}`, resource: ec2Arn(r, typeOf(id), id), context: resourceTags(known[id]) })
  // A resource the call creates: AWS authorizes it under its new ID.
  const created = (type, tags, action = call.action) => ({ action: `ec2:${action}`, resource: ec2Arn(r, type, NEW[type]), context: requestTags(tags || []) })
  const tagOnCreate = (specs) => Object.entries(specs).filter(([, t]) => t.length).map(([type, t]) => ({
    action: 'ec2:CreateTags', resource: ec2Arn(r, type, NEW[type]), context: { ...requestTags(t), 'ec2:CreateAction': call.action },
  }))
  switch (call.action) {
    case 'RunInstances': {
      const specs = tagSpecs(p)
      const out = [
        created('instance', specs.instance), created('volume', specs.volume), created('network-interface', []),
        own(p.ImageId),
        // A volume made from a snapshot at launch authorizes that snapshot too.
        ...Object.keys(p).filter((k) => /^BlockDeviceMapping\.\d+\.Ebs\.SnapshotId$/.test(k)).map((k) => own(p[k])),
        ...listOf(p, 'SecurityGroupId').map(own),
        p.SubnetId ? own(p.SubnetId) : created('subnet', []),
        ...tagOnCreate(specs),
      ]
      const profile = p['IamInstanceProfile.Name']
      if (profile) {
        out.push({ action: 'iam:PassRole', resource: `arn:aws:iam::${account}:role/${roles[profile] || profile}`, context: { 'iam:PassedToService': 'ec2.amazonaws.com' } })
      }
      return out
    }
    case 'CreateSecurityGroup': {
      const specs = tagSpecs(p)
      return [created('security-group', specs['security-group']), p.VpcId ? own(p.VpcId) : created('vpc', []), ...tagOnCreate(specs)]
    }
    case 'CreateImage': {
      const specs = tagSpecs(p)
      const out = [created('image', specs.image), created('snapshot', specs.snapshot), own(p.InstanceId), ...tagOnCreate(specs)]
      return out
    }
    case 'CopyImage': {
      const specs = tagSpecs(p)
      const src = p.SourceImageId
      return [
        created('image', specs.image), created('snapshot', specs.snapshot),
        { action: 'ec2:CopyImage', resource: ec2Arn(p.SourceRegion, 'image', src), context: resourceTags(known[src]) },
        ...tagOnCreate(specs),
      ]
    }
    case 'CreateTags': {
      const tags = tagsOf(p, 'Tag')
      return listOf(p, 'ResourceId').map((id) => ({
        action: 'ec2:CreateTags', resource: ec2Arn(r, typeOf(id), id), context: { ...resourceTags(known[id]), ...requestTags(tags) },
      }))
    }
    case 'CreateVolume': {
      // A volume made from a snapshot authorizes that snapshot too.
      const specs = tagSpecs(p)
      return [created('volume', specs.volume), ...(p.SnapshotId ? [own(p.SnapshotId)] : []), ...tagOnCreate(specs)]
    }
    case 'AttachVolume':
    case 'DetachVolume':
      return [...(p.InstanceId ? [own(p.InstanceId)] : []), own(p.VolumeId)]
    case 'DeleteVolume':
      return [own(p.VolumeId)]
    case 'ModifyInstanceAttribute':
    case 'StopInstances':
    case 'TerminateInstances':
      return listOf(p, 'InstanceId').concat(p.InstanceId ? [p.InstanceId] : []).map(own)
    case 'DeregisterImage':
    case 'ModifyImageAttribute':
    case 'EnableImageDeprecation':
    case 'DisableImageDeprecation':
    case 'EnableImageDeregistrationProtection':
    case 'DisableImageDeregistrationProtection':
      return [own(p.ImageId)]
    case 'DeleteSnapshot':
      return [own(p.SnapshotId)]
    case 'DeleteSecurityGroup':
      return [own(p.GroupId)]
    default:
      if (call.action.startsWith('Describe')) return [{ action: `ec2:${call.action}`, resource: '*', context: {} }]
      return null
  }
}

function ssmRequests(call) {
  const b = call.body || {}
  const r = call.region
  const one = (name) => ({ action: `ssm:${call.action}`, resource: paramArn(r, name), context: {} })
  switch (call.action) {
    case 'GetParameter':
    case 'GetParameterHistory':
    case 'DeleteParameter':
      return [one(b.Name)]
    case 'PutParameter':
      return [{ ...one(b.Name), context: requestTags((b.Tags || []).map((t) => [t.Key, t.Value])) }]
    case 'GetParametersByPath':
      return [one(b.Path)]
    case 'GetParameters':
    case 'DeleteParameters':
      return (b.Names || []).map(one)
    case 'SendCommand': {
      const doc = b.DocumentName
      const docArn = doc.startsWith('AWS-') ? `arn:aws:ssm:${r}::document/${doc}` : `arn:aws:ssm:${r}:${account}:document/${doc}`
      return [
        { action: 'ssm:SendCommand', resource: docArn, context: {} },
        ...(b.InstanceIds || []).map((id) => ({ action: 'ssm:SendCommand', resource: ec2Arn(r, 'instance', id), context: resourceTags((call.tags || {})[id], true) })),
      ]
    }
    // The account's own documents (the audit documents): authorized on the document's ARN.
    case 'DescribeDocument':
    case 'CreateDocument':
    case 'UpdateDocument':
    case 'UpdateDocumentDefaultVersion':
      return [{ action: `ssm:${call.action}`, resource: `arn:aws:ssm:${r}:${account}:document/${b.Name}`, context: {} }]
    case 'GetCommandInvocation':
    case 'DescribeInstanceInformation':
    case 'ListCommandInvocations':
    case 'DescribeParameters':
      return [{ action: `ssm:${call.action}`, resource: '*', context: {} }]
    default:
      return null
  }
}

// Image Builder (Service Authorization Reference, "Actions defined by Amazon EC2 Image
// Builder"): the List calls of resources take no resource; the rest are authorized on the ARN
// they name or create (names lowercased in ARNs); CreateInfrastructureConfiguration also needs
// iam:GetInstanceProfile and iam:PassRole of the profile's role to EC2; CreateImageRecipe reads
// its components (GetComponent) and CreateImage its recipe and configurations (Get*).
function imagebuilderRequests(call) {
  const b = call.body || {}
  const ib = (r) => `arn:aws:imagebuilder:${call.region}:${account}:${r}`
  const lower = (s) => (s || '').toLowerCase()
  const tagged = (tags) => requestTags(Object.entries(tags || {}))
  const one = (resource, context = {}) => ({ action: `imagebuilder:${call.action}`, resource, context })
  switch (call.action) {
    case 'ListComponents':
    case 'ListImageRecipes':
    case 'ListInfrastructureConfigurations':
    case 'ListDistributionConfigurations':
    case 'ListImages':
      return [one('*')]
    case 'CreateComponent':
      return [one(ib(`component/${lower(b.name)}/${b.semanticVersion}/1`), tagged(b.tags))]
    case 'CreateImageRecipe':
      return [
        one(ib(`image-recipe/${lower(b.name)}/${b.semanticVersion}`), tagged(b.tags)),
        // A component named by its version ARN is read as the build it resolves to (the
        // Service Authorization Reference's component resource is component/<name>/<version>/<build>;
        // the emulator's Image Builder makes build 1 of each version).
        ...(b.components || []).map((c) => ({
          action: 'imagebuilder:GetComponent',
          resource: c.componentArn.split(':component/')[1].split('/').length === 2 ? `${c.componentArn}/1` : c.componentArn,
          context: {},
        })),
      ]
    case 'CreateInfrastructureConfiguration': {
      const profile = b.instanceProfileName
      return [
        one(ib(`infrastructure-configuration/${lower(b.name)}`), tagged(b.tags)),
        { action: 'iam:GetInstanceProfile', resource: `arn:aws:iam::${account}:instance-profile/${profile}`, context: {} },
        { action: 'iam:PassRole', resource: `arn:aws:iam::${account}:role/${roles[profile] || profile}`, context: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
      ]
    }
    case 'CreateDistributionConfiguration':
      return [one(ib(`distribution-configuration/${lower(b.name)}`), tagged(b.tags))]
    case 'CreateImage': {
      const recipe = (b.imageRecipeArn || '').split(':image-recipe/')[1] || ''
      return [
        one(ib(`image/${recipe}/1`), tagged(b.tags)),
        { action: 'imagebuilder:GetImageRecipe', resource: b.imageRecipeArn, context: {} },
        { action: 'imagebuilder:GetInfrastructureConfiguration', resource: b.infrastructureConfigurationArn, context: {} },
        ...(b.distributionConfigurationArn ? [{ action: 'imagebuilder:GetDistributionConfiguration', resource: b.distributionConfigurationArn, context: {} }] : []),
      ]
    }
    case 'GetImage':
    case 'CancelImageCreation':
    case 'DeleteImage':
    case 'ListWorkflowExecutions':
      return [one(b.imageBuildVersionArn)]
    case 'ListImageBuildVersions':
      return [one(`${b.imageVersionArn}/*`)]
    case 'ListWorkflowStepExecutions':
      return [one(ib(`workflow-execution/${b.workflowExecutionId}`))]
    default:
      return null
  }
}

function requestsOf(call) {
  if (call.service === 'imagebuilder') return imagebuilderRequests(call)
  if (call.service === 'ec2') return ec2Requests(call)
  if (call.service === 'ssm') return ssmRequests(call)
  if (call.service === 'eks' && call.action === 'DescribeCluster') {
    const name = (call.path || '').split('/').filter(Boolean)[1]
    return [{ action: 'eks:DescribeCluster', resource: `arn:aws:eks:${call.region}:${account}:cluster/${name}`, context: {} }]
  }
  if (call.service === 'eks' && call.action === 'ListAccessEntries') {
    const name = (call.path || '').split('/').filter(Boolean)[1]
    return [{ action: 'eks:ListAccessEntries', resource: `arn:aws:eks:${call.region}:${account}:cluster/${name}`, context: {} }]
  }
  if (call.service === 'eks' && (call.action === 'DescribeAccessEntry' || call.action === 'ListAssociatedAccessPolicies')) {
    // /clusters/<name>/access-entries/<principal ARN>[/access-policies]: authorized on the
    // entry's ARN (access-entry/<cluster>/<role|user>/<account>/<name>/<uuid>).
    const [, name, , principal] = (call.path || '').split('/').filter(Boolean).map(decodeURIComponent)
    const kind = /:user\//.test(principal || '') ? 'user' : 'role'
    const id = (principal || '').split('/').pop()
    return [{ action: `eks:${call.action}`, resource: `arn:aws:eks:${call.region}:${account}:access-entry/${name}/${kind}/${account}/${id}/00000000-0000-0000-0000-000000000000`, context: {} }]
  }
  if (call.service === 'iam') {
    const p = call.params || {}
    if (call.action === 'GetInstanceProfile') return [{ action: 'iam:GetInstanceProfile', resource: `arn:aws:iam::${account}:instance-profile/${p.InstanceProfileName}`, context: {} }]
    if (call.action === 'ListAttachedRolePolicies') return [{ action: 'iam:ListAttachedRolePolicies', resource: `arn:aws:iam::${account}:role/${p.RoleName}`, context: {} }]
    return null
  }
  if (call.service === 'sts' && call.action === 'GetCallerIdentity') return [{ action: 'sts:GetCallerIdentity', resource: '*', context: {} }]
  return null
}

async function evaluate(req) {
  const simulation = {
    identityPolicies: [{ name: 'bake', policy: input.policy }],
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    request: {
      principal: `arn:aws:iam::${account}:role/bake-pipeline`,
      action: req.action,
      resource: { resource: req.resource, accountId: account },
      contextVariables: req.context,
    },
  }
  // AWS-owned resources (public parameters, AWS-* documents) have ARNs without an account,
  // which the evaluator's ARN validation does not accept; they are evaluated unvalidated.
  if (/^arn:aws:ssm:[^:]*::/.test(req.resource)) {
    const result = runUnsafeSimulation(simulation, {})
    return { result: typeof result === 'string' ? result : result?.result ?? JSON.stringify(result) }
  }
  const response = await runSimulation(simulation, {})
  if (response.resultType === 'error') return { result: 'Error', errors: response.errors }
  return { result: response.overallResult }
}

const out = []
for (const [n, call] of (input.calls || []).entries()) {
  const reqs = requestsOf(call)
  if (reqs === null) {
    out.push({ call: n, action: `${call.service}:${call.action}`, resource: null, context: {}, result: 'Unmapped' })
    continue
  }
  for (const req of reqs) out.push({ call: n, ...req, ...(await evaluate(req)) })
}
for (const req of input.requests || []) out.push({ call: null, ...req, ...(await evaluate(req)) })
process.stdout.write(JSON.stringify(out))
