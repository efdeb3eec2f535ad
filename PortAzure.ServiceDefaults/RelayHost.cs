using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using PortAzure.Diagnostics;

namespace Microsoft.Extensions.Hosting;

/// <summary>How the relay's services (and the emulator) build their host.</summary>
public static class RelayHost
{
    /// <summary>
    /// The options for <see cref="WebApplication.CreateBuilder(WebApplicationOptions)"/>: the content root is the app's own
    /// folder, where its appsettings.json is, wherever the process was started from (from another directory the Ingress
    /// found no appsettings.json, so no operator API routes, and answered /api/* 404). One given explicitly
    /// (<c>--contentRoot</c>, <c>ASPNETCORE_CONTENTROOT</c>, <c>DOTNET_CONTENTROOT</c>) is left to the host, which reads it.
    /// </summary>
    public static WebApplicationOptions Options(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var given = new ConfigurationBuilder()
            .AddEnvironmentVariables("DOTNET_")
            .AddEnvironmentVariables("ASPNETCORE_")
            .AddCommandLine(args)
            .Build()[HostDefaults.ContentRootKey];
        return new WebApplicationOptions { Args = args, ContentRootPath = string.IsNullOrEmpty(given) ? AppContext.BaseDirectory : null };
    }

    /// <summary>
    /// Builds the app (<paramref name="addServices"/>, then <paramref name="map"/>), runs it until it is stopped and returns
    /// the process's exit code (<see cref="RunUntilStopped"/>). A configuration that fails while the app is built, before
    /// its host and logging exist, also ends with 1 and one line on stderr: a value that is not of its key's kind (a word
    /// for a number) is read there (Kestrel's limits, the host's shutdown time), and it escaped as an unhandled exception,
    /// an abort (exit 134).
    /// </summary>
    public static int Run(string[] args, Action<WebApplicationBuilder> addServices, Action<WebApplication> map)
    {
        ArgumentNullException.ThrowIfNull(addServices);
        ArgumentNullException.ThrowIfNull(map);
        WebApplication app;
        try
        {
            var builder = WebApplication.CreateBuilder(Options(args));
            addServices(builder);
            app = builder.Build();
            map(app);
        }
        catch (Exception ex) when (ex is InvalidOperationException or OptionsValidationException)
        {
            // The configuration binder's and the options' own messages name the key (never a secret's value: those are
            // strings, never converted).
            Console.Error.WriteLine($"{AppDomain.CurrentDomain.FriendlyName} did not start: {ExceptionMessages.Of(ex)}");
            return 1;
        }
        return app.RunUntilStopped();
    }

    /// <summary>
    /// Runs the app until it is stopped and returns the process's exit code: 0 after a stop, 1 if it could not start (an
    /// option refused by its validation, a port in use). The host has logged why by then ("Hosting failed to start", with
    /// every validation failure); letting the exception escape, as <c>app.Run()</c> does, printed it a second time and
    /// aborted the process (SIGABRT, exit 134, a core dump where they are enabled), which reads as a crash of the relay
    /// rather than a configuration it refused.
    /// </summary>
    public static int RunUntilStopped(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        try
        {
            try
            {
                app.StartAsync().GetAwaiter().GetResult();
            }
#pragma warning disable CA1031 // Any failure to start ends the process with 1; the host has logged the exception itself.
            catch (Exception)
#pragma warning restore CA1031
            {
                // A stop asked for while starting (SIGTERM in a rolling restart, while the connection to Redis is made) cut
                // the start short: an orderly stop, not a failure.
                return app.Lifetime.ApplicationStopping.IsCancellationRequested ? 0 : 1;
            }
            app.WaitForShutdown();
            return 0;
        }
        finally
        {
            // Flushes the console logger's queue, which may hold the host's line saying why it did not start.
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }
}
