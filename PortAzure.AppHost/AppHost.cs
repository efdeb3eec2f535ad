using PortAzure;
using Microsoft.Extensions.Configuration;
using PortAzure.AppHost;

var builder = DistributedApplication.CreateBuilder(args);

var redis = builder.AddRelayRedis();

// Secrets are parameters marked secret. In run mode they have development defaults so that
// `dotnet run` needs no set-up; a published manifest carries no value for them.
var runMode = builder.ExecutionContext.IsRunMode;
var portClientSecret = builder.AddRelayParameter(ResourceNames.PortClientSecretParameter, "port-demo-secret", secret: true);
var portClientId = builder.AddRelayParameter(ResourceNames.PortClientIdParameter, "portazure-dev", secret: false);
var adminApiKey = builder.AddRelayParameter(ResourceNames.AdminApiKeyParameter, "dev-admin-key-local", secret: true);

var dispatcher = builder.AddProject<Projects.PortAzure_Dispatcher>(ResourceNames.Dispatcher)
    .WithReference(redis).WaitFor(redis)
    .WithEnvironment("Port__ClientSecret", portClientSecret)
    .WithEnvironment("Port__ClientId", portClientId)
    .WithEnvironment("Admin__ApiKey", adminApiKey)
    .WithHttpHealthCheck("/health")
    .WithReplicas(builder.Configuration.GetValue("Dispatcher:Replicas", 1));
if (builder.ExecutionContext.IsPublishMode)
{
    // The manifest's project.v0 entry has no replica count; this writes the usual entry plus a
    // "replicas" value bound to a parameter, so the deployment chooses it.
    dispatcher.WithReplicaCountParameter(builder.AddParameter(ResourceNames.DispatcherReplicasParameter));
}

var ingress = builder.AddProject<Projects.PortAzure_Ingress>(ResourceNames.Ingress)
    .WithReference(redis).WaitFor(redis)
    .WithReference(dispatcher)
    .WithEnvironment("Port__ClientSecret", portClientSecret)
    .WithEnvironment("Admin__ApiKey", adminApiKey)
    .WithExternalHttpEndpoints()
    .WithHttpHealthCheck("/health")
    .WithReplicas(builder.Configuration.GetValue("Ingress:Replicas", 1));

if (runMode)
{
    // The local dashboard shows a span per Redis command and a log line per accepted and delivered run too.
    // The services leave both off by default (spans cost hundreds of MB under load, the lines CPU per run:
    // docs/benchmarks.md), so deployments do not get them.
    foreach (var service in new IResourceBuilder<IResourceWithEnvironment>[] { ingress, dispatcher })
    {
        service.WithEnvironment("Aspire__StackExchange__Redis__DisableTracing", "false");
        service.WithEnvironment("Logging__LogLevel__PortAzure", "Debug");
    }
}

// A local setting (a user secret, the shell's environment): a manifest leaves AzureDevOps__BaseUrl to the deployment,
// where a value from the publishing machine (an emulator on localhost) would dead-letter every run.
if (runMode && builder.Configuration["AzureDevOps:BaseUrl"] is { Length: > 0 } azureBaseUrl)
{
    dispatcher.WithEnvironment("AzureDevOps__BaseUrl", azureBaseUrl);
}
else if (runMode)
{
    // No Azure DevOps configured: a local emulator takes the webhook POSTs (and Port's API calls), so
    // a new user sees a run go through without an Azure account. Never part of a deployment.
    var emulator = builder.AddProject<Projects.PortAzure_AzureDevOpsEmulator>(ResourceNames.AzureDevOpsEmulator)
        .WithEnvironment("Emulator__Secret", portClientSecret)
        .WithHttpHealthCheck("/health");
    var emulatorUrl = emulator.GetEndpoint("http");
    dispatcher
        .WithEnvironment("AzureDevOps__BaseUrl", emulatorUrl)
        .WithEnvironment("Port__ApiBaseUrl", emulatorUrl)
        .WaitFor(emulator);
}

builder.Build().Run();
