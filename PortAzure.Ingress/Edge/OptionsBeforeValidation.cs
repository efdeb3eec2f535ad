using Microsoft.Extensions.Options;

namespace PortAzure.Ingress.Edge;

internal static class OptionsBeforeValidation
{
    /// <summary>
    /// The options' value, or null when they fail their validation. For options read while the app is built (Kestrel's
    /// limits, the forwarded-headers setup, the proxy's rate-limiter policies), before the start-up validation that reports
    /// every invalid option at once: thrown there, one section's errors hid the others and escaped the host. The host
    /// refuses to start with them anyway.
    /// </summary>
    public static T? ValueOrNull<T>(this IOptions<T> options) where T : class
    {
        ArgumentNullException.ThrowIfNull(options);
        try
        {
            return options.Value;
        }
        catch (OptionsValidationException)
        {
            return null;
        }
    }
}
