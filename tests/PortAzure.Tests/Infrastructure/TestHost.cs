using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PortAzure.AzureDevOpsEmulator;
using PortAzure.Dispatcher;
using PortAzure.Dispatcher.Api;
using PortAzure.Ingress;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// One of the relay's real hosts (Program.cs's own wiring) on Kestrel at 127.0.0.1 with a free port.
/// On dispose it checks that no log line at Information or above revealed a secret or a body marker.
/// </summary>
public sealed class TestHost : IAsyncDisposable
{
    private readonly IEnumerable<string> _forbidden;

    private TestHost(WebApplication app, LogSink logs, IEnumerable<string> forbidden)
    {
        App = app;
        Logs = logs;
        _forbidden = forbidden;
        var address = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
        BaseAddress = new Uri(address.Replace("[::]", "127.0.0.1", StringComparison.Ordinal) + "/");
        Client = new HttpClient { BaseAddress = BaseAddress };
    }

    public WebApplication App { get; }

    public LogSink Logs { get; }

    public Uri BaseAddress { get; }

    public HttpClient Client { get; }

    public IServiceProvider Services => App.Services;

    public static Task<TestHost> StartIngressAsync(IDictionary<string, string?> config, Action<IServiceCollection>? services = null) =>
        StartAsync("PortAzure.Ingress", config, services, b => b.AddIngressServices(), a => a.MapIngress());

    public static Task<TestHost> StartDispatcherAsync(IDictionary<string, string?> config, Action<IServiceCollection>? services = null) =>
        StartAsync("PortAzure.Dispatcher", config, services, b => b.AddDispatcherServices(), a => a.MapOperatorApi());

    public static Task<TestHost> StartEmulatorAsync(IDictionary<string, string?>? config = null) =>
        StartAsync("PortAzure.AzureDevOpsEmulator", config ?? new Dictionary<string, string?>(), null, b => b.AddEmulatorServices(), a => a.MapEmulatorEndpoints());

    private static async Task<TestHost> StartAsync(string project, IDictionary<string, string?> config, Action<IServiceCollection>? services,
        Action<WebApplicationBuilder> add, Action<WebApplication> map)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            ApplicationName = project,
            EnvironmentName = "Testing",
            // The project's own appsettings.json (YARP routes and all) is what the test runs with.
            ContentRootPath = Path.Combine(Repository.Root, project),
        });
        // The relay's own Debug lines (a success per run, refusals under load) are captured too, so that the
        // no-secrets check at disposal covers them; a test's own settings can still override this. The emulator
        // logs what it receives, bodies included, at Debug: it stands in for Azure, where the rule does not apply.
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Logging:LogLevel:PortAzure"] = "Debug",
            ["Logging:LogLevel:PortAzure.AzureDevOpsEmulator"] = "Information",
        });
        builder.Configuration.AddInMemoryCollection(config);
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var logs = new LogSink();
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Debug);
        builder.Logging.AddProvider(logs);
        builder.AddServiceDefaults();
        add(builder);
        services?.Invoke(builder.Services);
        var app = builder.Build();
        app.MapDefaultEndpoints();
        map(app);
        await app.StartAsync();
        var forbidden = config.Where(kv => kv.Key.Contains("Secret", StringComparison.OrdinalIgnoreCase) || kv.Key.Contains("ApiKey", StringComparison.OrdinalIgnoreCase))
            .Select(kv => kv.Value!)
            .Append(TestRuns.BodyMarker)
            .ToArray();
        return new TestHost(app, logs, forbidden);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        Logs.AssertNoneContain(_forbidden);
    }
}

public static class Repository
{
    public static string Root { get; } = Find();

    private static string Find()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "PortAzure.Aspire.sln")))
        {
            directory = directory.Parent;
        }
        return directory?.FullName ?? throw new InvalidOperationException("PortAzure.Aspire.sln not found above the test output.");
    }
}
