using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.AppHost;

[Collection(HeavyTests.Name)]
public class AppHostTests
{
    private const string RedisCommandTracingSwitch = "Aspire__StackExchange__Redis__DisableTracing";
    private const string RelayLogLevel = "Logging__LogLevel__PortAzure";

    [Fact]
    public async Task AppHost_WithRedisServerExecutable_RunsARunThroughToTheEmulator()
    {
        var dataDirectory = Path.Combine(Path.GetTempPath(), "portazure-tests", "apphost-" + Guid.NewGuid().ToString("N")[..8]);
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.PortAzure_AppHost>(
            ["--Redis:Mode=executable", $"--Redis:DataDirectory={dataDirectory}"]);
        // The resources' logs go to a sink, shown only if the test fails: on the console they bury CI's summary.
        var logs = new LogSink();
        builder.Services.AddLogging(logging => logging.ClearProviders().AddProvider(logs));
        try
        {
            await RunThroughToTheEmulatorAsync(builder, dataDirectory, logs);
        }
        catch (Exception failure) when (failure is not OperationCanceledException)
        {
            throw new Xunit.Sdk.XunitException($"{failure.Message}\nLast log lines of the app:\n{string.Join('\n', logs.Lines.TakeLast(80))}", failure);
        }
    }

    private static async Task RunThroughToTheEmulatorAsync(IDistributedApplicationTestingBuilder builder, string dataDirectory, LogSink logs)
    {
        await using var app = await builder.BuildAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await app.StartAsync(timeout.Token);
        foreach (var resource in new[] { ResourceNames.Ingress, ResourceNames.Dispatcher, ResourceNames.AzureDevOpsEmulator })
        {
            await app.ResourceNotifications.WaitForResourceAsync(resource, KnownResourceStates.Running, timeout.Token);
        }
        // The local dashboard shows a span per Redis command and a line per run; the services' own defaults leave both off.
        foreach (var service in new[] { ResourceNames.Ingress, ResourceNames.Dispatcher })
        {
            var running = await app.ResourceNotifications.WaitForResourceAsync(service, e => e.Snapshot.State?.Text == KnownResourceStates.Running, timeout.Token);
            Assert.Contains(running.Snapshot.EnvironmentVariables, v => v.Name == RedisCommandTracingSwitch && v.Value == "false");
            Assert.Contains(running.Snapshot.EnvironmentVariables, v => v.Name == RelayLogLevel && v.Value == "Debug");
        }

        using var ingress = app.CreateHttpClient(ResourceNames.Ingress);
        using var emulator = app.CreateHttpClient(ResourceNames.AzureDevOpsEmulator);
        var runId = TestRuns.NewRunId();
        var body = TestRuns.Body(runId);
        HttpStatusCode status = 0;
        // The Ingress may answer before its Redis connection is up; a real Port call would be retried too.
        // "Running" means launched, not listening: until Kestrel listens, DCP's proxy drops the connection.
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                using var response = await TestRuns.SendAsync(ingress, body);
                status = response.StatusCode;
                return status is HttpStatusCode.Accepted or HttpStatusCode.OK;
            }
            catch (HttpRequestException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(60), () => $"the Ingress accepts the run (last answer: {(int)status})");

        var emulatorApi = new EmulatorClient(emulator);
        await Eventually.HoldsAsync(async () => (await emulatorApi.RequestsAsync()).Any(r => r.Header("X-Port-Run-Id") == runId),
            TimeSpan.FromSeconds(60), "the run reaches the emulator");
        var received = Assert.Single(await emulatorApi.RequestsAsync(), r => r.Header("X-Port-Run-Id") == runId);
        Assert.True(received.SignatureValid);
        Assert.Equal(body, received.Body);
        await Eventually.HoldsAsync(() => Task.FromResult(logs.Lines.Any(l => l.Contains($"Accepted run {runId}", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "the Ingress's log shows the accepted run");

        await Eventually.HoldsAsync(async () =>
        {
            using var health = await ingress.GetAsync("/health");
            return health.StatusCode == HttpStatusCode.OK;
        }, TimeSpan.FromSeconds(10), "the Ingress's /health answers 200");
        using var operatorCall = new HttpRequestMessage(HttpMethod.Get, $"/api/deliveries?runId={runId}");
        operatorCall.Headers.Add("X-Api-Key", "dev-admin-key-local");
        using var answer = await ingress.SendAsync(operatorCall);
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);

        await app.StopAsync(CancellationToken.None);
        try
        {
            Directory.Delete(dataDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    [Fact]
    public async Task Manifest_Published_HasPersistentRedisExternalIngressSecretParametersAndNoEmulator()
    {
        using var manifest = await PublishManifestAsync();
        var resources = manifest.RootElement.GetProperty("resources");

        var redis = resources.GetProperty(ResourceNames.Redis);
        Assert.StartsWith("container.v", redis.GetProperty("type").GetString(), StringComparison.Ordinal);
        var command = string.Join(" ", redis.GetProperty("args").EnumerateArray().Select(a => a.GetString()));
        Assert.Matches("redis-server .*--appendonly yes --appendfsync (everysec|always)", command);
        Assert.Contains(redis.GetProperty("volumes").EnumerateArray(), v => v.GetProperty("name").GetString() == "portazure-redis-data" && v.GetProperty("target").GetString() == "/data");

        var ingress = resources.GetProperty(ResourceNames.Ingress);
        Assert.Equal("project.v0", ingress.GetProperty("type").GetString());
        Assert.True(ingress.GetProperty("bindings").GetProperty("http").GetProperty("external").GetBoolean());
        Assert.Equal("{redis.connectionString}", ingress.GetProperty("env").GetProperty("ConnectionStrings__redis").GetString());
        Assert.Equal("{port-client-secret.value}", ingress.GetProperty("env").GetProperty("Port__ClientSecret").GetString());

        var dispatcher = resources.GetProperty(ResourceNames.Dispatcher);
        Assert.Equal("project.v0", dispatcher.GetProperty("type").GetString());
        Assert.False(dispatcher.GetProperty("bindings").GetProperty("http").TryGetProperty("external", out var external) && external.GetBoolean());
        Assert.Equal("{admin-api-key.value}", dispatcher.GetProperty("env").GetProperty("Admin__ApiKey").GetString());
        Assert.Equal("{dispatcher-replicas.value}", dispatcher.GetProperty("replicas").GetString());
        Assert.Equal("parameter.v0", resources.GetProperty("dispatcher-replicas").GetProperty("type").GetString());

        foreach (var secret in new[] { "port-client-secret", "admin-api-key" })
        {
            var parameter = resources.GetProperty(secret);
            Assert.Equal("parameter.v0", parameter.GetProperty("type").GetString());
            Assert.True(parameter.GetProperty("inputs").GetProperty("value").GetProperty("secret").GetBoolean());
            // No development default is published.
            Assert.False(parameter.GetProperty("inputs").GetProperty("value").TryGetProperty("default", out _));
        }
        Assert.False(resources.TryGetProperty(ResourceNames.AzureDevOpsEmulator, out _));
        // A deployment keeps the services' default: no span per Redis command.
        Assert.False(ingress.GetProperty("env").TryGetProperty(RedisCommandTracingSwitch, out _));
        Assert.False(dispatcher.GetProperty("env").TryGetProperty(RedisCommandTracingSwitch, out _));
        Assert.False(ingress.GetProperty("env").TryGetProperty(RelayLogLevel, out _));
        Assert.False(dispatcher.GetProperty("env").TryGetProperty(RelayLogLevel, out _));
        Assert.DoesNotContain("port-demo-secret", manifest.RootElement.GetRawText(), StringComparison.Ordinal);
        Assert.DoesNotContain("dev-admin-key-local", manifest.RootElement.GetRawText(), StringComparison.Ordinal);

        // The Dispatcher's entry is written by our callback (for its replicas): it must not lose what Aspire writes for
        // the Ingress, should a later version add to a project's entry.
        var ingressKeys = ingress.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal);
        var dispatcherKeys = dispatcher.EnumerateObject().Select(p => p.Name).Where(n => n != "replicas").Order(StringComparer.Ordinal);
        Assert.Equal(ingressKeys, dispatcherKeys);
    }

    [Fact]
    public async Task Manifest_PublishedWithLocalSettings_CarriesNoneOfThem()
    {
        // Settings for a local run (an emulator's URL, fsync off for speed) on the publishing machine: published, the
        // first would dead-letter every run, the second leave acknowledged runs to the kernel's flush.
        using var manifest = await PublishManifestAsync("--AzureDevOps:BaseUrl=http://localhost:5099", "--Redis:AppendFsync=no",
            "--ConnectionStrings:redis=localhost:6390");
        var resources = manifest.RootElement.GetProperty("resources");

        Assert.False(resources.GetProperty(ResourceNames.Dispatcher).GetProperty("env").TryGetProperty("AzureDevOps__BaseUrl", out _));
        var command = string.Join(" ", resources.GetProperty(ResourceNames.Redis).GetProperty("args").EnumerateArray().Select(a => a.GetString()));
        Assert.Contains("--appendfsync everysec", command, StringComparison.Ordinal);
        Assert.DoesNotContain("localhost", manifest.RootElement.GetRawText(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Manifest_PublishedInConnectionStringMode_RedisIsASecretParameterAndNoContainer()
    {
        // For a managed Redis: the deployment fills the connection string; no container, and no REDIS_HOST/REDIS_PASSWORD
        // pointing at one.
        using var manifest = await PublishManifestAsync("--Redis:Mode=connectionstring", "--ConnectionStrings:redis=localhost:6390,password=local-only");
        var resources = manifest.RootElement.GetProperty("resources");

        var redis = resources.GetProperty(ResourceNames.Redis);
        Assert.Equal("parameter.v0", redis.GetProperty("type").GetString());
        Assert.True(redis.GetProperty("inputs").GetProperty("value").GetProperty("secret").GetBoolean());
        Assert.False(redis.GetProperty("inputs").GetProperty("value").TryGetProperty("default", out _));
        Assert.DoesNotContain(resources.EnumerateObject(), r => r.Value.GetProperty("type").GetString()!.StartsWith("container.", StringComparison.Ordinal));
        foreach (var service in new[] { ResourceNames.Ingress, ResourceNames.Dispatcher })
        {
            var env = resources.GetProperty(service).GetProperty("env");
            Assert.Equal("{redis.connectionString}", env.GetProperty("ConnectionStrings__redis").GetString());
            Assert.DoesNotContain(env.EnumerateObject(), v => v.Name.StartsWith("REDIS_", StringComparison.Ordinal));
        }
        // The publishing machine's own Redis is not the deployment's.
        Assert.DoesNotContain("localhost", manifest.RootElement.GetRawText(), StringComparison.Ordinal);
        Assert.DoesNotContain("local-only", manifest.RootElement.GetRawText(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("connection-string")]
    [InlineData("container,executable")]
    [InlineData("3")]
    public async Task Manifest_PublishedWithAnUnknownRedisMode_StopsNamingTheSetting(string mode)
    {
        // A typo must not publish the container where a managed Redis was meant; nor may a number or a list of names
        // (which the enum parser would take: "container,executable" is ConnectionString's value) pick a mode.
        var error = await Assert.ThrowsAnyAsync<Exception>(() => PublishManifestAsync($"--Redis:Mode={mode}"));
        Assert.Contains("Redis:Mode", error.Message, StringComparison.Ordinal);
    }

    /// <summary>Runs the built AppHost as `dotnet run` would publish it, with <paramref name="args"/> as its configuration.</summary>
    private static async Task<JsonDocument> PublishManifestAsync(params string[] args)
    {
        var output = Path.Combine(Path.GetTempPath(), "portazure-tests", $"manifest-{Guid.NewGuid():N}.json");
        Directory.CreateDirectory(Path.GetDirectoryName(output)!);
        var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";
        var appHost = Path.Combine(Repository.Root, "PortAzure.AppHost", "bin", configuration, "net10.0", "PortAzure.AppHost.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { appHost, "--publisher", "manifest", "--output-path", output }.Concat(args))
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromMinutes(2)).Token);
        Assert.True(process.ExitCode == 0, await stdout + await stderr);
        var manifest = JsonDocument.Parse(await File.ReadAllTextAsync(output));
        File.Delete(output);
        return manifest;
    }

    [Theory]
    [InlineData(null, "everysec")]
    [InlineData("always", "always")]
    public async Task ExecutableRedis_HasAofOnInADataFolderThatIsKept(string? fsync, string expected)
    {
        var dataDirectory = Path.Combine(Path.GetTempPath(), "portazure-tests", "apphost-model-" + Guid.NewGuid().ToString("N")[..8]);
        string[] args = fsync is null
            ? ["--Redis:Mode=executable", $"--Redis:DataDirectory={dataDirectory}"]
            : ["--Redis:Mode=executable", $"--Redis:DataDirectory={dataDirectory}", $"--Redis:AppendFsync={fsync}"];
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.PortAzure_AppHost>(args);

        var redis = Assert.IsAssignableFrom<ExecutableResource>(builder.Resources.Single(r => r.Name == ResourceNames.Redis));
#pragma warning disable CS0618 // The replacement (ExecutionConfigurationBuilder) needs a running app; this reads the model only.
        var values = await redis.GetArgumentValuesAsync();
#pragma warning restore CS0618

        Assert.Equal("redis-server", redis.Command);
        var line = string.Join(" ", values);
        Assert.Contains("--appendonly yes", line, StringComparison.Ordinal);
        Assert.Contains($"--appendfsync {expected}", line, StringComparison.Ordinal);
        Assert.Contains($"--dir {dataDirectory}", line, StringComparison.Ordinal);
        Assert.Contains("--bind 127.0.0.1", line, StringComparison.Ordinal);
        Assert.True(Directory.Exists(dataDirectory));
        Assert.IsAssignableFrom<IResourceWithConnectionString>(redis);
        Directory.Delete(dataDirectory, recursive: true);
    }

    [Fact]
    public async Task ReplicaSettings_IngressAndDispatcher_ModelHasThatManyReplicas()
    {
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.PortAzure_AppHost>(
            ["--Redis:Mode=connectionstring", "--ConnectionStrings:redis=127.0.0.1:1", "--Ingress:Replicas=2", "--Dispatcher:Replicas=3"]);

        int Replicas(string name) => builder.Resources.Single(r => r.Name == name).Annotations.OfType<ReplicaAnnotation>().Single().Replicas;
        Assert.Equal(2, Replicas(ResourceNames.Ingress));
        Assert.Equal(3, Replicas(ResourceNames.Dispatcher));
    }

    [Fact]
    public async Task ConnectionStringMode_UsesTheGivenRedisAndStartsNoServer()
    {
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.PortAzure_AppHost>(
            ["--Redis:Mode=connectionstring", "--ConnectionStrings:redis=redis.example:6380,ssl=true"]);

        var redis = builder.Resources.Single(r => r.Name == ResourceNames.Redis);

        Assert.IsNotType<ExecutableResource>(redis);
        Assert.IsNotType<ContainerResource>(redis);
        Assert.IsAssignableFrom<IResourceWithConnectionString>(redis);
    }

    [Fact]
    public async Task UnknownRedisMode_StopsWithAMessageNamingTheSetting()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => DistributedApplicationTestingBuilder.CreateAsync<Projects.PortAzure_AppHost>(["--Redis:Mode=floppy"]));
        Assert.Contains("Redis:Mode", error.ToString(), StringComparison.Ordinal);
    }
}
